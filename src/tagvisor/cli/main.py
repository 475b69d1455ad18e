"""Entry point of the ``tagvisor`` command (placeholder until subcommands land)."""


def main(argv: list[str] | None = None) -> int:
    return 0

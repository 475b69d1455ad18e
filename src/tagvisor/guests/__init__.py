"""The guests that ship with tagvisor: their images (``*.elf`` here), what each does
(:data:`tagvisor.guests.catalogue.GUESTS`), their report ids
(:mod:`tagvisor.guests.reports`), and a decoder that turns their reports into lines a
person reads (:class:`tagvisor.guests.decode.ReportDecoder`)."""

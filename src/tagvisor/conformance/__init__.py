"""Conformance: the same scenarios on the model and on a real ``/dev/kvm``, compared.

``scenarios`` holds the scenarios (standard library only); ``suite`` is what the
testbed runs inside its image; ``compare`` runs the model side and lists differences.
"""

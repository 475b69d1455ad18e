"""The report ids of guests/runtime/reports.h, as the package ships them
(tagvisor.guests.reports); tests/guests checks them against the header."""

from tagvisor.guests.reports import *  # noqa: F403 - the ids, under their names

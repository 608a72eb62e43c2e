"""Error and warning types of the importer.

Every message is a sentence naming the file, layer and field involved and what to do about it, so a user
holding a 500 MB caffemodel from a 2016 fork can fix the input without reading our code.
"""

from __future__ import annotations


class CaffeImportError(ValueError):
    """A prototxt, caffemodel or layer the importer cannot convert faithfully."""


class CaffeImportWarning(UserWarning):
    """Something the importer accepted but a user should know (dropped layers, unknown fields, fork quirks)."""

"""Data sources, their discovery, splits, the Dataset and the image cache.

Importing the package registers the built-in sources (`utils.data.sources`): each module
below ends with its own `register_source(...)` call. A new dataset adds its module here.
"""
from . import kermany, rsna, nih  # noqa: F401, I001 - for their registrations, in this order
from .sources import list_sources  # noqa: E402 - after the registrations above

# the registered sources with a binary pneumonia label (NIH: its Pneumonia finding)
BINARY_SOURCES = tuple(list_sources(binary=True))

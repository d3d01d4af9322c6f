"""Data sources, their discovery, splits, the Dataset and the image cache.

Importing the package registers the built-in sources (`utils.data.sources`): each module
below ends with its own `register_source(...)` call. A new dataset adds its module here.
"""
from . import kermany, rsna, nih  # noqa: F401, I001 - for their registrations, in this order

"""Configuration files: their keys declared once (schema.py, watchlist_keys.py),
typed and checked access to their tables (section.py), the parsers of
sizes, durations and addresses (values.py) and the README reference
rendered from the declarations (reference.py). watchlist.py loads the file."""

"""The pure-Python backend: the store format of spec/FORMAT.md, in NumPy."""

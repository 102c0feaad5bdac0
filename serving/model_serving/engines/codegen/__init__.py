"""C source for a parsed forest: shared entry points (generate) over one of two tree layouts
(quickscorer tables, nested if/else), with doubles written to read back bit for bit (c_literals)."""

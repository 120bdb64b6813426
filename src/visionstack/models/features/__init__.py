"""Feature levels: layouts and token grids (``layout``), level discovery by probing (``probe``,
``discovery``), the fx cut after the deepest level (``graph_cut``) and output stride by dilation."""

"""What each CLI verb does, importable from Python: predict, evaluate, export, cam, tta, reports,
retrieval, bench, summary, verify, plot. Each ``visionstack <verb>`` is a thin ``cli`` module over one."""

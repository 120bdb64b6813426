"""``python -m visionstack`` (used by ``torchrun -m visionstack train CFG``)."""

from visionstack.cli.main import main

raise SystemExit(main())

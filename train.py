"""Train the AA-CLIP baseline (or the baseline_continued control); see ``python train.py --help``."""

from aaclip_xattn.train.cli import train_main

raise SystemExit(train_main())

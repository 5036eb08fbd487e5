"""Train AA-CLIP with cross-attention, from a base model or --scratch; see ``--help``."""

from aaclip_xattn.train.cli import train_cross_attention_main

raise SystemExit(train_cross_attention_main())

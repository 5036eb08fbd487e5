"""Evaluate an AA-CLIP or cross-attention checkpoint; see ``python inference.py --help``."""

from aaclip_xattn.evaluate.cli import inference_main

raise SystemExit(inference_main())

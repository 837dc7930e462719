"""The feed service (BentoML in front of Triton), installed as ``genrec.feed``."""

"""Flax model families with Hugging Face checkpoint name maps (see ``family.py``)."""

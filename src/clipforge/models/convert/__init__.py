"""Converters from other checkpoint layouts (HF, open_clip, OpenAI) into native clipforge models.

Importing this package registers their model-reference resolvers with `clipforge.models.checkpoint`.
"""

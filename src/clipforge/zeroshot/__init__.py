"""clipforge.zeroshot"""

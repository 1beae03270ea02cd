"""clipforge.adapt"""

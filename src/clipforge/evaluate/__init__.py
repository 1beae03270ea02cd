"""clipforge.evaluate"""

"""clipforge.data"""

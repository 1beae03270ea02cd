"""clipforge.losses"""

"""clipforge.retrieval"""

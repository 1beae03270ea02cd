"""clipforge.curate"""

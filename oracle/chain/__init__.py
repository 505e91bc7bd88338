"""oracle/chain"""

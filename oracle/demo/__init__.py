"""oracle/demo"""

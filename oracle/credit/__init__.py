"""oracle/credit"""

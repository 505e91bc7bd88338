"""oracle/protocol"""

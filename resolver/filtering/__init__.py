"""Filtering: lists, the compiled domain index, schools and policies, and the pure decision over them."""

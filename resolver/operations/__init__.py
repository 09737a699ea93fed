"""Operations: what an operator reads and drives (admin API, metrics exposition)."""

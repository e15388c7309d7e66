print("Redis benchmark: not written yet")

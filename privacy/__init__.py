"""Data-subject rights and retention: export, erasure (crypto-shredding), restriction,
withdraw-and-delete, and the retention purge, over domains that each implement `SubjectData`.
It never reaches into another domain's tables: each domain answers for its own data.
"""

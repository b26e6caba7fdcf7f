"""The device lab: matrix runs over models x recipes x devices, a results store, regression
comparison and reports. spec (the lab file) -> matrix (cells, shards) -> runner (one export per
(model, recipe), every device) -> store (SQLite/PostgreSQL) -> compare / html / junit."""

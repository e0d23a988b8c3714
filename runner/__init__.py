"""Stage 3: a worker runs one element of a plan: load the model once, run batches, write Parquet."""

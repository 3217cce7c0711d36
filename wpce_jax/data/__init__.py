"""Data: CC12M-style tar shards -> ArrayRecord records -> grain batches, plus built-in small datasets.

    records.py          the record schema, dataset manifest and the one shard writer
    convert.py          webdataset tars -> record dataset (python -m wpce_jax.data.convert)
    image_check.py      validation / normalisation of one downloaded image (used by convert)
    image_ops.py        decode + crop + resize + normalise (PIL or simplejpeg)
    pipeline.py         make_train_dataset() and make_eval_dataset(): the grain input pipelines, dataset_size()
    unreadable.py       stand-ins for training records that do not read or decode, the skipped-fraction limit
    tokenizers.py       get_tokenizer(): CLIP BPE and SentencePiece behind one interface
    train_tokenizer.py  SentencePiece training (python -m wpce_jax.data.train_tokenizer)
    run_data.py         a config's data resolved: the training records, the tokenizer, the run plan (RunPlan)
    class_balanced.py   class-balanced sampling (data.samples_per_class) for the labelled mode
    eval_sources.py     evaluation sources: converted records, TFDS, class folders
    tfds_to_records.py  a TFDS dataset -> record dataset (python -m wpce_jax.data.tfds_to_records)
    digits.py           built-in tiny dataset from scikit-learn's digits
    digit_pairs.py      built-in graded set: two digit scans side by side, (left, right) label tuples
    testing.py          real tar shards for tests and benchmarks
"""

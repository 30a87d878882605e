"""The table kind (``data.kind: table``): rows of numbers, categories and free text.

prepare infers the columns' roles (:mod:`.schema`), keeps the row ledger and writes one
``tf.train.Example`` feature per column; the model takes the raw columns as a dict and does
its own preprocessing, adapted on the train split; a scikit-learn baseline runs on the same
splits. See docs/tables.md.
"""

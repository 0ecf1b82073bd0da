"""recserve-train: builds the bundles the server loads (see ``trainer.cli`` for the commands).

Pipeline (``trainer.build``), all splits by time::

    data dir --io--> Dataset --split--> [ fit | label(s) ) [ held-out test ]
      fit@label_cut   (artifacts.fit: embeddings ALS -> hnsw index, i2i, popularity/trending, features, histories)
      tune            decay_short / alpha (and --factors lists) by ANN recall@50 on the label window
      ranker_rows     candidates via recserve._core.candidates (the server's retrieval) + merge_candidates,
                      rows via recserve._core.cross.Crosser (the server's crossing), labels = next actions
      ranker_train    LightGBM lambdarank, early stopping on held-out groups
      fit@test_cut    the served artifacts on everything before the test cut
      write           writer.write_bundle: temp dir, fsync, rename, CURRENT replaced last
      evaluate        (optional) trainer.evaluate on the held-out window, into manifest + report.json/html

Modules: io (read/validate/write), synth, movielens, split, embeddings, neighbours, index, features,
artifacts, retrieval, ranker, evaluate, report (+ plots: inline SVG), writer, timing, progress (tqdm bars),
build, cli. ``recserve/bundle.py`` verifies
and opens bundles for both sides.
"""

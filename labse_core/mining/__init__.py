"""Margin-based bitext mining (Artetxe & Schwenk 2019, as LASER's ``mine_bitexts.py`` and stopes do it).

    knn.py     faiss k-nearest neighbours in both directions: exact flat or IVF(-PQ), chosen by size
    margin.py  the margin criterion, candidate scores and the retrieval modes (forward, backward,
               intersection, max), pure numpy on the kNN lists
    shards.py  embed a stream of sentences in chunks and spill the vectors to .npy shards
    resume.py  the work folder a killed run resumes from (its shards, its MLflow run id)
    miner.py   the whole run: inputs (text, Parquet, a lake dataset, precomputed .npy) -> embeddings ->
               kNN -> margin -> threshold -> the data pipeline's filters and dedupe -> rows of ``mined``
"""

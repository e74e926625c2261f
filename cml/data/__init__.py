"""Where tracks come from: the default corpus, the soundtracks benchmark, the pretraining pool, scanning a
folder, the split, the track table and the handcrafted features."""

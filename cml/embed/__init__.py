"""One embedding per track: any model over a track table or a folder, with an on-disk cache."""

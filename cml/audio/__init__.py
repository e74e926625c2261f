"""Audio in: decoding files (soundfile), resampling, and the log-mel front end every model reads."""

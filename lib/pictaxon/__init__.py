"""From a few words to an image classifier anyone can use in a web page.

Modules:

- `pictaxon.clean`: Web-search data is noisy: cartoons, logos, the wrong species, the same photo twice. The fast.ai habit is train -> look at the worst -> clean -> retrain. This module ranks the suspects with reasons, lets you mark them in a reviewer that remembers your marks, and applies the marks through one safe path: nothing is ever deleted, every move is logged, and every apply can be undone byte for byte."""

__version__ = "0.1.0"

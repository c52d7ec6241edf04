"""wastenet: classify photos of waste and decide which bin each item goes in.

Train, evaluate, predict, explain, export and serve a waste classifier::

    from wastenet import Classifier
    clf = Classifier.load("runs/densenet121/best.pt")
    print(clf.predict(["bottle.jpg"])[0])

The command line mirrors the API: ``wastenet train | eval | predict | explain | export | serve``.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so that `import wastenet` stays cheap and torch-free on the edge.
    if name == "Classifier":
        from wastenet.inference.predictor import Classifier

        return Classifier
    raise AttributeError(name)

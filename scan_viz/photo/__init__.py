"""A zero-shot region-word model for photographs: ConSE region vectors, GloVe word vectors, SCAN's attention.

    photo --NanoDet (COCO 80) + proposals (selective search)--> boxes --EfficientNet-lite0--> ImageNet class
          probabilities per box --top-T, + NanoDet's class scores + colour-name fractions of the box's pixels-->
          region features (1000 + 80 + n_colours)
    region features --fc = [class-name vectors | COCO names | colour names] (ConSE), l2norm--> region vectors (50-d)
    sentence --GloVe 6B 50-d, one vector per word--> word vectors (50-d) --SCAN t2i--> attention, score

ConSE (Norouzi et al., ICLR 2014) embeds an image as the probability-weighted mean of the word vectors of its
top-T classes; the weighted mean is a matrix product, so it is the image encoder's ``fc`` (a ScanModel like
every other, loaded by ``load_model``), and the 1/Z of the paper disappears in the l2 normalisation. Nothing
here was trained on a caption: the classifier saw ImageNet labels, NanoDet COCO's boxes and class labels, the word
vectors Wikipedia text.

``detector``: the region extractor (``pretrained/detector-photo``); ``objects``: its object detector (NanoDet,
vendored as graph JSON + safetensors, run by ``tf_graph`` in torch); ``vectors``: class names, colour terms and the
ConSE matrix; ``build``: ``python -m scan_viz.train.photo build-model|build-gallery|tune``.
"""

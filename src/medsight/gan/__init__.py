"""GAN augmentation: a class-conditional DCGAN and a mask-to-image Pix2Pix, their generator
folders, sampling, quality figures and mixing generated samples into classifier training.

* :mod:`medsight.gan.dcgan`: noise + label -> image; :func:`~medsight.gan.dcgan.train_dcgan`.
* :mod:`medsight.gan.pix2pix`: mask -> image; :func:`~medsight.gan.pix2pix.train_pix2pix`.
* :mod:`medsight.gan.store`: the generator folder (``generator.safetensors`` + ``gan.json``).
* :mod:`medsight.gan.quality`: classifier Fréchet distance (not Inception FID), train-on-synthetic /
  test-on-real accuracy, sample grids and the report.

Mixing into training lives in :mod:`medsight.classification.synthetic` (``train.synthetic``).
"""

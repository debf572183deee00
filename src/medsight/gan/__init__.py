"""GAN augmentation: training a class-conditional DCGAN and a mask-to-image Pix2Pix, sampling,
quality figures.

* :mod:`medsight.gan.dcgan`: noise + label -> image; :func:`~medsight.gan.dcgan.train_dcgan`.
* :mod:`medsight.gan.pix2pix`: mask -> image; :func:`~medsight.gan.pix2pix.train_pix2pix`.
* :mod:`medsight.gan.quality`: classifier Fréchet distance (not Inception FID), train-on-synthetic /
  test-on-real accuracy, sample grids and the report.

The generator networks are :mod:`medsight.models.generators` and the generator folder
(``generator.safetensors`` + ``gan.json``) is :mod:`medsight.models.generator_store`, so that
mixing generated samples into classifier training (:mod:`medsight.classification.synthetic`,
``train.synthetic``) needs no GAN training code.
"""

"""Adapters attached to loaded models: PhotoMaker, ControlNets, Storynizor's ID-Injector, IP-Adapter. Each attaches
once per loaded models (methods share it through ``LoadedModels.attachments``) and has a ``detach()`` that undoes
what attaching did.

The tiny and random-weight presets resolve their own adapter weights here ("auto" gives them random weights of
the right architecture, built by ``tiny``), so methods never ask which preset they run on.

- ``base``: what every attachment is (``Attachment``) and ``detach_all``.
- ``photomaker``: ``PhotoMakerSettings`` and ``attach_photomaker`` (v1 and v2).
- ``controlnet``: ``ControlNetSettings`` and ``attach_controlnet``.
- ``id_injector``: ``attach_id_injector`` (Storynizor's ID-Injector and its image encoder).
- ``ip_adapter``: ``IPAdapterSettings`` and ``attach_ip_adapter`` (through diffusers' own loader).
- ``tiny``: random adapter weights in the official file layouts, for the tiny and random-weight presets.

Nothing heavy is imported here; import the submodule you need.
"""

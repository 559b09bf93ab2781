"""The web app (``storycast app``): a Gradio front end over the same library functions as the CLI.

Every module here but :mod:`storycast.app.ui` is plain Python without gradio, testable without a browser:

- :mod:`~storycast.app.config`: the app's settings and where it listens;
- :mod:`~storycast.app.folders`: the app's folder (uploads, run folders, downloads), safe names and upload checks;
- :mod:`~storycast.app.story_form`: form values -> story document -> :func:`storycast.story.parse.parse_story`;
- :mod:`~storycast.app.method_form`: a method's settings as form fields, with the help ``storycast methods`` shows;
- :mod:`~storycast.app.drawing`: drawing a run folder (:func:`storycast.runs.plan.plan_run`,
  :func:`storycast.runs.runner.execute_plan`) with progress, one drawing at a time, and its exports;
- :mod:`~storycast.app.identities`: browsing the identity library and reusing an identity for a character.

The core never imports this package; ``import storycast`` never imports gradio.
"""

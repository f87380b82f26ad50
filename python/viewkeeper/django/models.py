# No models. The module exists so that Django sends this app its own pre_migrate and
# post_migrate signals (it skips apps without one), which is how the app acts once per migrate.

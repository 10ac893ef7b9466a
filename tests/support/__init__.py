"""What many tests need, written once: databases and migrations (`db`), a running worker and
waits on its signals (`worker`), and the store calls only tests make (`store`)."""

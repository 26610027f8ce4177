"""kern_d2's tests (a package, so that test modules of the same name may sit in different folders and import
``tests.helpers``); the folders mirror kern_d2/ (see README.md, Layout)."""

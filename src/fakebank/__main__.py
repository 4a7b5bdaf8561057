from fakebank.cli import main

main()

from reverb_py.cli import main

main()

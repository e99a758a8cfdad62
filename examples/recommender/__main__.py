from examples.recommender.main import main

main()
